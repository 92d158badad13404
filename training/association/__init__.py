"""Kim et al. 2018: face and voice encoders trained with a triplet loss into one space."""
