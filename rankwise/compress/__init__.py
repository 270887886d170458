"""The survey's integrable compression stages, applied after low-rank decomposition:
pruning (`prune`, `filter_prune`) → int8 quantization (`quantize`) → entropy coding (`entropy`),
with `stage_stats` to measure what each stage buys.
"""

from rankwise.compress.entropy import (
    CodingReport,
    CodingRow,
    coding_report,
    decode_state,
    encode_state,
    read_header,
    shannon_entropy,
)
from rankwise.compress.filter_prune import (
    FilterPruneReport,
    FilterPruneRow,
    filter_norms,
    filter_prune,
)
from rankwise.compress.prune import (
    PruneReport,
    SparsityRow,
    layer_input_sizes,
    magnitude_prune,
    prunable_layers,
    sparsity_report,
    stage_stats,
)
from rankwise.compress.quantize import (
    QuantizedState,
    dequantize,
    dequantize_per_channel,
    dequantize_state_dict,
    fake_quantize,
    quantize_dynamic_linear,
    quantize_model,
    quantize_per_channel,
)

__all__ = [
    "CodingReport",
    "CodingRow",
    "FilterPruneReport",
    "FilterPruneRow",
    "PruneReport",
    "QuantizedState",
    "SparsityRow",
    "coding_report",
    "decode_state",
    "dequantize",
    "dequantize_per_channel",
    "dequantize_state_dict",
    "encode_state",
    "fake_quantize",
    "filter_norms",
    "filter_prune",
    "layer_input_sizes",
    "magnitude_prune",
    "prunable_layers",
    "quantize_dynamic_linear",
    "quantize_model",
    "quantize_per_channel",
    "read_header",
    "shannon_entropy",
    "sparsity_report",
    "stage_stats",
]
