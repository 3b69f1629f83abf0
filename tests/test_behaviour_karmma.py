"Behaviour tests of m2df.karmma (issue 23)."
