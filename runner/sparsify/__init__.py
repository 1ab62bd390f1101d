"""`adamrun sparsify-bert`: fine-tune, prune, distil, quantize, export and benchmark a BERT model on the CPU.

Entry point: `runner.sparsify.pipeline.run(cfg)`. Heavy libraries (torch, transformers, onnxruntime) are
imported inside functions so that `adamrun --help` stays fast.
"""
