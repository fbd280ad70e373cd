"""Post-training int8 quantization: the numeric scheme (scheme.py), where Q/DQ pairs go (placement.py),
activation ranges (ranges.py), the search over calibration variants and fallbacks (search.py), Q/DQ
insertion (insert.py) and the ``quantize`` pass that runs them in order (quantize.py)."""
