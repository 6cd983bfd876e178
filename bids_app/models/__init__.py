"""bids_app.models"""
