"""Speed measurements: interleaved timing of models side by side."""
from lemevit.bench.throughput import Measurement, build_runner, measure_interleaved

__all__ = ["Measurement", "build_runner", "measure_interleaved"]
