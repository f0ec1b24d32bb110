// The DICOM tag panel: the current image's attributes, the patient's identity masked as in the banner.
import { maskIns } from './dicomweb.js';
import { t } from './i18n.js';

const PATIENT_NAME = '00100010', PATIENT_ID = '00100020', PATIENT_SEX = '00100040';

// What the banner shows of the patient, and nothing more: the name, the INS masked, the sex. Every other
// attribute of the Patient module (birth date, other IDs, address, …) says "(masked)".
function shown(tag, element) {
  if (tag.startsWith('0010') && ![PATIENT_NAME, PATIENT_ID, PATIENT_SEX, '00100021', '00100022'].includes(tag)) {
    return t('tags.masked');
  }
  if (element.InlineBinary !== undefined || element.BulkDataURI !== undefined) return t('tags.binary');
  const values = element.Value || [];
  if (element.vr === 'SQ') return t('tags.items', { n: values.length });
  const text = values.map((v) => (v && typeof v === 'object' ? (v.Alphabetic || '').replace(/\^+/g, ' ').trim() : String(v))).join(' \\ ');
  if (tag === PATIENT_ID) return maskIns(text);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

export function fillTags(item) {
  const body = document.querySelector('#tags tbody');
  const rows = [];
  for (const tag of Object.keys(item || {}).sort()) {
    const tr = document.createElement('tr');
    tr.dataset.tag = tag;
    for (const text of [`(${tag.slice(0, 4)},${tag.slice(4)})`, item[tag].vr || '', shown(tag, item[tag])]) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}
