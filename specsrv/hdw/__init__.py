"""spec's server-hardware facility: the ASCII protocol, a device framework, two simulators.

``mca_server`` and ``img_server`` are complete servers built on the
framework; a site writes one :class:`~specsrv.hdw.device.Device` subclass
for its own hardware and calls :func:`specsrv.hdw.cli.serve`.
"""
