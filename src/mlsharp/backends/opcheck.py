"""The operators of an exported ONNX graph, against what other providers document.

``python -m mlsharp.backends.opcheck model.onnx`` prints each operator (domain:type) and
whether each provider in :data:`DOCUMENTED` lists it. The tables are copied by hand from
the providers' own documentation (sources in :data:`SOURCES`; docs/hardware.md has the
result). This is a check on paper: only ONNX Runtime's CPU provider runs here.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: Where each provider's list of supported operators was read (2026-12-06).
SOURCES = {
    "QNN": "onnxruntime/onnxruntime-qnn docs/execution_providers/QNN-ExecutionProvider.md, "
    "section 'Supported ONNX operators' (commit 0131740f)",
}

#: The operators our graphs use that each provider lists (ai.onnx unless a domain is
#: given). A graph operator missing here is reported as "not listed".
DOCUMENTED: dict[str, frozenset[str]] = {
    "QNN": frozenset(
        {
            *[
                "Add",
                "AveragePool",
                "Cast",
                "Clip",
                "Concat",
                "Conv",
                "ConvTranspose",
                "Div",
                "Expand",
                "Gather",
                "Gelu",
            ],
            *[
                "Greater",
                "InstanceNormalization",
                "LayerNormalization",
                "LessOrEqual",
                "Log",
                "MatMul",
            ],
            *[
                "MaxPool",
                "Mul",
                "Neg",
                "Pow",
                "Reciprocal",
                "ReduceMin",
                "Relu",
                "Reshape",
                "Resize",
                "Sigmoid",
                "Slice",
            ],
            *[
                "Softmax",
                "Softplus",
                "Split",
                "Sqrt",
                "Squeeze",
                "Sub",
                "Tile",
                "Transpose",
                "Unsqueeze",
                "Where",
            ],
            "com.microsoft:MatMulNBits",
        }
    ),
}


def graph_operators(model_file: Path) -> list[str]:
    """Sorted operator names of the graph (``Type``, or ``domain:Type`` outside ai.onnx),
    subgraphs included; the weights are not read."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    found: set[str] = set()
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        for node in graph.node:
            domain = node.domain or "ai.onnx"
            found.add(node.op_type if domain == "ai.onnx" else f"{domain}:{node.op_type}")
            pending += [a.g for a in node.attribute if a.g is not None and a.g.node]
    return sorted(found)


def opset(model_file: Path) -> int:
    """The graph's ai.onnx opset version."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def unlisted(operators: list[str], provider: str) -> list[str]:
    """The operators ``provider``'s documentation does not list."""
    return [op for op in operators if op not in DOCUMENTED[provider]]


def main(argv: list[str] | None = None) -> int:
    """Print the operator table of the ONNX file given; 1 if a provider lacks one."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlsharp.backends.opcheck MODEL.onnx", file=sys.stderr)
        return 2
    operators = graph_operators(Path(args[0]))
    print(f"opset {opset(Path(args[0]))}, {len(operators)} operators")
    missing = 0
    for provider in DOCUMENTED:
        gaps = unlisted(operators, provider)
        missing += len(gaps)
        print(f"{provider}: {'all listed' if not gaps else 'not listed: ' + ', '.join(gaps)}")
        print(f"  source: {SOURCES[provider]}")
    print("operators: " + ", ".join(operators))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
