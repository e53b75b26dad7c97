"""cctrace: find where an LLM server loses time at the CPU<->GPU boundary, and say why."""

__version__ = "0.1.0"
