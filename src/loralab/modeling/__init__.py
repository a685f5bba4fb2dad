"""The model: building and loading it, the task shapes, the forward pass over batches."""
