"""Post-training int8 quantization: the numeric scheme (scheme.py), where Q/DQ pairs go (placement.py)
and the ``quantize`` pass that inserts them (insert.py)."""
