"""Microcontroller firmware: build the C templates, make loadable models, generate projects.

- :mod:`.build`: compile ``templates/`` with gcc (the host firmware, the conformance
  tool, one file at a time);
- :mod:`.artifact`: the loadable emlearn artifact (EOML) a firmware receives over MQTT;
- :mod:`.runner`: EOML run by the firmware's own loader on the host (the pipeline's
  ``emlearn-loadable`` export measures it);
- :mod:`.variants`: attach that artifact to a registered version as ``emlearn-loadable``;
- :mod:`.signing`: per-device HMAC keys and the rollout controller's default signer;
- :mod:`.host`: run the host firmware as a process and ask it for predictions;
- :mod:`.project`, :mod:`.testing`, :mod:`.footprint`: ``edgeops firmware generate``,
  ``edgeops firmware test`` and the Cortex-M4 footprint recorded on a variant.

See docs/firmware.md.
"""
