"Behaviour tests of m2df.datacheck (issue 23)."
