"""An app with no models whose migrations are the generated RunSQL files of the benchmark.

Its migrations module is chosen by ``bench.settings`` from NIXMIG_BENCH_DJANGO_PATH; with
that unset the app has no migrations at all.
"""
