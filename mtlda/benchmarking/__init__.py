"""The benchmark behind ``mtlda benchmark``: what is compared (:mod:`.plan`), the real training-step cases
(:mod:`.cases`), measuring time and memory (:mod:`.measure`), random batches of a data set's shapes
(:mod:`.random_data`), the xTAM attention kernels (:mod:`.attention`) and data loading (:mod:`.loading`)."""
