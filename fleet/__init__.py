"""Build, provision, test and watch one Dokku box per region."""
