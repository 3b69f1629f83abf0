"Behaviour tests of m2df.splits (issue 23)."
