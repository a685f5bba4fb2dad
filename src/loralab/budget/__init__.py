"""What a configuration costs: the modules LoRA adapts (scope) and the exact count of trainable parameters."""
