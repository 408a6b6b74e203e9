"""harness/: turns suite.yaml into work — datasets, detectors, quantization, export, trials, store."""
