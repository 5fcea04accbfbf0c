"""Speed, cost and memory of models measured side by side (``lemevit benchmark``)."""
from lemevit.bench.cost import MAC_COUNTER, count_macs, count_parameters
from lemevit.bench.machine import cpu_capability, cpu_name, machine_description
from lemevit.bench.memory import peak_memory_mib
from lemevit.bench.suite import BenchmarkConfig, run_benchmark, write_outputs
from lemevit.bench.throughput import Measurement, build_model, build_step, measure_interleaved

__all__ = ["MAC_COUNTER", "BenchmarkConfig", "Measurement", "build_model", "build_step", "count_macs",
           "count_parameters", "cpu_capability", "cpu_name", "machine_description", "measure_interleaved",
           "peak_memory_mib", "run_benchmark", "write_outputs"]
