"""flexitok.io"""
