"""warmer's shared state: what every daemon of a fleet must agree on.

:mod:`warmer.state.store` is the interface and its values,
:mod:`warmer.state.demand` the per-daemon demand writer,
:mod:`warmer.state.memory` and :mod:`warmer.state.rados` the two stores.
The layout in RADOS and the decay arithmetic are described in docs/state.md.
"""
