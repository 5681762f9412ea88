"""The data types: concept masks, formulas, quantile math, histogram keys, codes, argument checks."""
