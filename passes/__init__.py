"""ONNX-to-ONNX passes of hawq-onnx (installed as ``hawq_onnx.passes``), built on onnx_ir.

One pass per module, each an ``onnx_ir.passes`` InPlacePass or FunctionalPass whose docstring
says what it preserves; ``pipelines`` composes them into the export targets, whose needs are
data in ``target_profiles`` (``ort-vnni``, ``ort-avx2``, ``openvino``, ``compact``; ``ort-cpu``
picks an ONNX Runtime one for this CPU). Float graph: ``onnx_simplify``, ``fold_batchnorm``,
``global_average_pool``, ``convert_opset``. Quantization: ``quantize_weights``,
``insert_activation_qdq``. Targets: ``split_shared_add``, ``clip_sub_byte_activations``,
``integer_requantize``, ``integer_pad``, ``two_bit_as_int4``, ``widen_sub_byte_weights``,
``unsigned_wide_input_weights``, ``computed_bias_scale``. Clean-up: ``compact_names``,
``drop_default_attributes``, ``drop_intermediate_shapes`` plus onnx_ir's common passes. Not passes: ``layer_binding`` (plan
layer -> node, the one place PyTorch names meet the graph) and ``graph_edit`` (naming and
node-building steps the passes share).
"""
