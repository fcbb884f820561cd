"""Drop node attributes that say what their operator's default already says.

The float export writes every convolution's ``group=1``, ``auto_pad="NOTSET"``, unit
``strides`` and ``dilations`` and zero ``pads`` in full: about 70 bytes per convolution. An
attribute is dropped when it equals the default in the operator's schema (for the opset the
model imports), or, for convolution and pooling, when its strides or dilations are all ones or
its pads all zeros, which the ONNX specification makes the default of the omitted attribute.

Preserves: every value the graph computes (the operator reads the same defaults), every node
and name.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

UNIT_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0}
SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "AveragePool", "MaxPool", "LpPool"})


def _schema_default(op_type: str, domain: str, version: int, name: str):
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    attr = schema.attributes.get(name)
    if attr is None or not attr.default_value.name:
        return None
    return onnx.helper.get_attribute_value(attr.default_value)


def _value(attr: ir.Attr):
    v = attr.value
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (list, tuple)):
        return list(v)
    return v


class DropDefaultAttributesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            version = model.opset_imports.get(node.domain or "", None)
            if version is None:
                continue
            for name in list(node.attributes):
                attr = node.attributes[name]
                if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    continue
                value = _value(attr)
                default = _schema_default(node.op_type, node.domain, version, name)
                unit = UNIT_DEFAULTS.get(name) if node.op_type in SPATIAL_OPS and node.domain in ("", "ai.onnx") else None
                if (default is not None and value == default) or \
                        (unit is not None and isinstance(value, list) and value and all(v == unit for v in value)):
                    del node.attributes[name]
                    modified = True
        return ir.passes.PassResult(model, modified)
