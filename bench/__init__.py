"""Benchmarks of nixmig against psql, dbmate, yoyo and Django's migrate (see bench/run.py)."""
