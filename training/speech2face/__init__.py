"""Speech2Face (Oh et al. 2019): face feature network, face decoder, voice encoder, evaluation."""
