"""The Tiled-CSL SpMM kernel and its launcher, one idea per module.

* :mod:`.config`: what a kernel variant is (``SpmmConfig``) and the tile constants;
* :mod:`.geometry`: the numbers a variant is compiled with, derived from its config;
* :mod:`.activations`, :mod:`.words`, :mod:`.products`, :mod:`.epilogue`: the stages, each a factory of device
  functions for one variant;
* :mod:`.tiled_csl`: the kernel, composed of the stages;
* :mod:`.plan`: which variant and grid a problem gets (policy only, no GPU calls but the device's SM count and
  the driver's occupancy answer);
* :mod:`.driver`: compiling once, argument packing, workspaces and the launch.

``docs/kernel-design.md`` has the reasons and measurements behind each decision.
"""
