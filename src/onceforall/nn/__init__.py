"""Layers: the static ones sub-networks are made of (:mod:`.layers`), and the elastic
operators supernets are made of, one module per block family (:mod:`.elastic_mbconv`,
:mod:`.elastic_resnet`). Elastic operators keep their configuration on the instance
(no global flags) and their state-dict keys equal the static layers' keys."""
