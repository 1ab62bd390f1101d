"""adamrun: reproduce AdamW, super-convergence and pruned-BERT-on-CPU results on your own data and hardware."""
