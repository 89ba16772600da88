"""After training: specialisation per target (:mod:`.specialize`), export and loading of
sub-networks (:mod:`.export`), the whole job (:mod:`.pipeline`), reports and plots."""
