"""ONNX files written by hand: models whose answers a test knows in advance."""

from pathlib import Path

import onnx


def scores_onnx(path: Path, bias: list, batch="n", output: str = "rows") -> None:
    """A valid ONNX model that takes (batch, 1, 28, 28) images and gives each the logits `bias`:
    as (batch, classes) rows, one row squeezed to (classes,) (`output="squeezed"`, for a batch of 1),
    or their sum, one number per image (`output="sum"`)."""
    h = onnx.helper
    x = h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [batch, 1, 28, 28])
    weights = h.make_tensor("w", onnx.TensorProto.FLOAT, [784, len(bias)], [0.0] * 784 * len(bias))
    offsets = h.make_tensor("b", onnx.TensorProto.FLOAT, [len(bias)], bias)
    nodes = [
        h.make_node("Flatten", ["images"], ["flat"], axis=1),
        h.make_node("Gemm", ["flat", "w", "b"], ["rows"]),
    ]
    shape = {"rows": [batch, len(bias)], "squeezed": [len(bias)], "sum": [batch]}[output]
    if output == "squeezed":
        nodes.append(h.make_node("Squeeze", ["rows", "axis"], ["squeezed"]))
    elif output == "sum":
        nodes.append(h.make_node("ReduceSum", ["rows", "axis"], ["sum"], keepdims=0))
    constants = [weights, offsets]
    if output != "rows":
        constants.append(h.make_tensor("axis", onnx.TensorProto.INT64, [1], [0 if output == "squeezed" else 1]))
    y = h.make_tensor_value_info(output, onnx.TensorProto.FLOAT, shape)
    graph = h.make_graph(nodes, "scores", [x], [y], initializer=constants)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), path)
