// Two exams side by side: which earlier exam to offer, and the second viewer beside this one (an <iframe> of
// the same page, same origin), scrolled in step through postMessage.
import { t } from './i18n.js';

const INS = /^[0-9]{13}([0-9]{2})?$/;

// The exam to compare with: the latest one before this one of the same region, else of the same modality, else
// the latest before it. Exams without a date come last.
export function previousExam(exams, current) {
  const others = exams.filter((e) => e.kos_uid !== current.kos_uid && e.study_uid && e.study_uid !== current.study_uid);
  const before = others.filter((e) => !current.date || !e.date || e.date < current.date)
    .sort((a, b) => String(b.date || '').localeCompare(String(a.date || '')));
  const shares = (field) => (e) => (e[field] || []).some((v) => (current[field] || []).includes(v));
  return before.find(shares('regions')) || before.find(shares('modalities')) || before[0] || null;
}

// The patient's other exams from the consumer box, when it can say (the exam's own INS, else the image's
// Patient ID when it is an INS); [] when it cannot.
export async function patientExams(exam, patientId) {
  const ins = exam.patient?.ins || (INS.test(patientId || '') ? patientId : '');
  if (!ins) return [];
  const resp = await fetch(`/conso/api/patients/${encodeURIComponent(ins)}/exams`, { credentials: 'same-origin' });
  if (!resp.ok) return [];
  return (await resp.json()).exams || [];
}

// The <select> of exams to compare with, the previous one chosen; hidden (with its button) when there is none.
export function fillChoices(select, exams, current, date) {
  const preselected = previousExam(exams, current);
  const options = exams.filter((e) => e.kos_uid !== current.kos_uid && e.study_uid && e.study_uid !== current.study_uid)
    .map((e) => {
      const option = document.createElement('option');
      option.value = e.kos_uid;
      option.textContent = t('compare.option', {
        date: e.date ? date(e.date) : '—', modality: (e.modalities || []).join('/'), description: e.description || '',
      }).trim();
      option.selected = e === preselected;
      return option;
    });
  select.replaceChildren(...options);
  return options.length > 0;
}

export function peerUrl(kos) {
  return `/viewer/?${new URLSearchParams({ kos, embedded: '1' })}`;
}
