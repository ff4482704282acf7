"""HTTP/1 without sockets: bytes in, events (and bytes to write) out.

``request.RequestStream`` reads the requests of one client connection (limits, trailers,
100-continue, the pipelining queue and its cap, upgrades, deadlines); ``response`` frames the
primary's answer for the client (``AnswerFramer``) and reads a target's answers on a pooled
connection (``ResponseStream``). The asyncio protocols in ``shadowd.ingress`` and
``shadowd.upstream`` drive them and do the I/O; llhttp (httptools) does the parsing inside.
"""
