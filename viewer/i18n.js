// The viewer's words: the box's catalogue for the language the browser prefers (French unless it prefers English).
// Every text a person reads comes from here; the page's French text is only what shows until the catalogue is in.

export const LANG = pickLanguage(navigator.languages || [navigator.language || '']);
let words = {};

export function pickLanguage(preferred) {
  for (const tag of preferred) {
    const primary = String(tag).toLowerCase().split('-')[0];
    if (primary === 'fr' || primary === 'en') return primary;
  }
  return 'fr';
}

let loading = null;

// Asked once the first image is painted (or the page has failed): the image needs no words, and until they
// arrive the page's own text is the French one.
export function loadWords() {
  loading ||= fetch(`messages/${LANG}.json`, { credentials: 'same-origin' })
    .then((resp) => (resp.ok ? resp.json() : {}))
    .catch(() => ({}))
    .then((loaded) => { words = loaded; translatePage(); return words; });
  return loading;
}

// The message `key` with its {placeholders} filled in; the key itself if the catalogue lacks it (a visible bug).
export function t(key, params = {}) {
  const template = words[key];
  if (template === undefined) return hasWords() ? key : '';
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

export function hasWords() {
  return Object.keys(words).length > 0;
}

// Numbers as the language writes them: 12,5 in French, 12.5 in English.
export function number(value, digits = 1) {
  return new Intl.NumberFormat(LANG, { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}

export function translatePage(root = document) {
  if (!hasWords()) return;
  document.documentElement.lang = LANG;
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll('[data-i18n-aria-label]')) el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  document.getElementById('stage')?.setAttribute('data-loading', t('loading'));
  document.body.dataset.words = LANG; // the page speaks its language now (the tests wait for it)
}
