"""Models that are not the generative LM: SASRec, popularity, and the base LMs genrec fine-tunes."""
