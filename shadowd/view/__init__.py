"""The supervisor's merged view, built in a process of its own.

The report and the verdict walk every endpoint's HDR histograms and run a significance test
per field: hundreds of milliseconds of CPU with 200 endpoints, seconds for a judgement. The
supervisor's loop serves the admin API and merges what the workers publish; it must answer
at once however big the statistics grow, and on a busy host the CPU that statistics take
must come second to the data plane's. So a child process (``shadowd.view.process``, at a
lower CPU priority) keeps its own copy of the merged statistics, fed with the same deltas
the supervisor merges, and builds the report and judges the verdict there. The supervisor
keeps the newest report as JSON bytes and serves those (``shadowd.view.client``).
"""
