"""edgeops's hardware-in-the-loop harness: the same scenarios on real devices over SSH
and on simulated devices in network namespaces (docs/hil.md).

Modules, from the outside in: :mod:`hil.cli` (``hil/run``), :mod:`hil.campaign`
(setup, scenarios, teardown), :mod:`hil.scenarios`, :mod:`hil.report`;
:mod:`hil.targets` (the targets file), :mod:`hil.hosts` (namespace and SSH targets),
:mod:`hil.netns` and :mod:`hil.wire` (namespaces, links, netem), :mod:`hil.impair`
(what a lossy link does, pure), :mod:`hil.probe` (runs on the device),
:mod:`hil.bundle`, :mod:`hil.agentconf`, :mod:`hil.broker`, :mod:`hil.model`.
"""
