"""The plain reference's recipe in this pipeline, three seeds (2026-12-04, night) (studies/reference_recipe/README.md)."""
