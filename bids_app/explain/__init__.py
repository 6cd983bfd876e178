"""bids_app.explain"""
