# The provider's example webhook handler (Flask), as its documentation gives it, with the port
# taken from the command line so the test can pick a free one.
import logging
import sys

from flask import Flask, request, jsonify

app = Flask(__name__)
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")


@app.route('/webhook/o3-video', methods=['POST'])
def o3_video_webhook():
    try:
        data = request.json
        generation_id = data.get('generation_id')
        if data.get('status') == 'completed':
            video_url = data.get('video_url')
            model = data.get('model')
            logging.info(f"Video ready for {generation_id}: {video_url} ({model})")
            process_video(generation_id, video_url, model)
        else:
            error_code = data.get('message')
            logging.error(f"Generation failed for {generation_id}: {error_code}")
            handle_failure(generation_id, error_code)
        return jsonify({'status': 'received'}), 200
    except Exception as e:
        logging.error(f"Webhook error: {str(e)}")
        return jsonify({'error': 'Internal error'}), 500


def process_video(generation_id, video_url, model):
    """Process completed video - download, store, notify user"""
    pass


def handle_failure(generation_id, error_code):
    """Handle failed generation - log, refund, notify"""
    pass


if __name__ == '__main__':
    app.run(host='127.0.0.1', port=int(sys.argv[1]))
