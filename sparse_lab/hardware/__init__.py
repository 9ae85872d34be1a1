"""Hardware targets, MAC counting and latency measurement."""
