"""SMG, iMiGUE and ActivityNet-style label layouts converted to canonical annotations."""
