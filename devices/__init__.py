"""Device transports, probes and the profiler (imported as ``edgekit.devices``)."""
