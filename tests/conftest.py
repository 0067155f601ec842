"""Every test, and every kernel nbval starts, runs with the portable CPU arithmetic of
``recollect/portable.env`` (set before the first ATen op). ``make test`` sets it already; this makes a
bare ``pytest`` do the same. A variable set by the caller is kept (the portability proof sets some on
purpose); ``context("smoke")`` says when one breaks portability."""
from recollect import portable

portable.apply_environment(override=False)
