"""keyvend's benchmarks (issue 4): `python -m bench` (`make bench`) runs them and prints one table.

Each module measures one thing against a baseline taken in the same run, so figures are
ratios that mean the same on a laptop and on a server: `webhook`, `delivery`, `paytokey`,
`keyimport`, `memory`; `harness` holds what they share, `seed` the bulk data, `bare` the
baseline server. Not part of `make test`.
"""
