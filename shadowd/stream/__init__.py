"""The exchange stream: one record format (the capture file's) flowing from the data plane to
the analysis plane, live (``handoff``) or from a file."""
