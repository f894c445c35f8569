"""The Chrome engine: a page (a URL, or a room template) rendered by Chromium on a
virtual display of its own, its sound played into an audio sink of its own, both captured
into the graph (lkmedia.sources.screen). Each job starts and ends its own Xvfb, PulseAudio
and Chromium (lkmedia.chrome.session)."""
