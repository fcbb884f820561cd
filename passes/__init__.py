"""ONNX-to-ONNX passes of hawq-onnx (installed as ``hawq_onnx.passes``), built on onnx_ir.

One pass per module, each an ``onnx_ir.passes`` InPlacePass or FunctionalPass whose docstring
says what it preserves; ``pipelines`` composes them into the export targets (``ort-cpu``,
``compact``). Float graph: ``onnx_simplify``, ``fold_batchnorm``, ``global_average_pool``,
``convert_opset``. Quantization: ``quantize_weights``, ``insert_activation_qdq``. Targets:
``split_shared_add``, ``clip_sub_byte_activations``, ``widen_sub_byte_weights``,
``unsigned_wide_input_weights``. Clean-up:
``drop_intermediate_shapes`` plus onnx_ir's common passes. Not passes: ``layer_binding`` (plan
layer -> node, the one place PyTorch names meet the graph) and ``graph_edit`` (naming and
node-building steps the passes share).
"""
