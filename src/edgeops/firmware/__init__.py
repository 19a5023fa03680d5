"""Microcontroller firmware: build the C templates, make loadable models, sign for MCUs.

- :mod:`.build`: compile ``firmware_templates/`` with gcc (the host firmware, the
  conformance tool, one file at a time);
- :mod:`.artifact`: the loadable emlearn artifact (EOML) a firmware receives over MQTT;
- :mod:`.variants`: attach that artifact to a registered version as ``emlearn-loadable``;
- :mod:`.signing`: per-device HMAC keys and a rollout controller that signs with them;
- :mod:`.host`: run the host firmware as a process and ask it for predictions.

See docs/firmware.md.
"""
