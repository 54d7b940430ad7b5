"""The threaded I/O shell: one module per thread kind, each thread named, owned and joined."""
