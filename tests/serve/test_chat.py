import urllib.request

from serve.chat import ChatModel, build_app, message_text, to_chat_messages


def test_gradio_content_parts_become_plain_messages():
    history = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
               {"role": "assistant", "content": "hello"}]
    msgs = to_chat_messages(history, [{"type": "text", "text": "again"}], "be brief")
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    assert message_text(None) == "" and message_text({"text": "x"}) == "x"


def test_respond_streams_a_growing_answer(tiny_model_dir):
    chat = ChatModel(str(tiny_model_dir))
    chat.settings.max_new_tokens = 8
    chunks = list(chat.respond("hello", [], "sys"))
    assert chunks and all(b.startswith(a) for a, b in zip(chunks, chunks[1:]))


def test_app_serves_on_loopback(tiny_model_dir):
    demo = build_app(ChatModel(str(tiny_model_dir)))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True)
    try:
        assert demo.server_name == "127.0.0.1"
        with urllib.request.urlopen(demo.local_url, timeout=30) as r:
            assert r.status == 200 and b"Keel" in r.read()
    finally:
        demo.close()
