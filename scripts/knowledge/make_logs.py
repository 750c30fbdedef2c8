"""Generate the sample inquiry logs in knowledge/logs/ (deterministic; the output is committed).

The base question/answer pairs below were written by hand to match the sample manuals (and to
add facts that only the help desks know). The generator adds the noise real logs have: repeated
questions (exact and reworded), typos, full-width/half-width variants, personal data typed in by
users (e-mail addresses, phone numbers, card numbers), and unresolved tickets.
"""
import csv, json, random

random.seed(20251128)

JA_IT = [
    ("VPNにつながらなくなりました", "SecureLinkを一度終了してPCを再起動し、再接続してください。ホテルのWi-Fiの場合はブラウザで利用規約に同意してから接続してください。", "VPN"),
    ("海外出張先からVPNを使いたい", "海外からの接続は事前の海外利用申請が必要です。情報システム部のポータルから渡航前に申請してください。", "VPN"),
    ("VPNが30分くらいで勝手に切れます", "無通信状態が30分続くと自動切断される仕様です。再接続してください。", "VPN"),
    ("パスワードを忘れてログインできません", "サインイン画面の「パスワードをお忘れの方」からSMS認証でリセットできます。携帯番号未登録の場合は社員証を持って本社5階の窓口へお越しください。", "アカウント"),
    ("アカウントがロックされました", "5回連続で誤入力すると30分ロックされます。急ぎの場合は内線4100へ連絡いただければ本人確認のうえ解除します。", "アカウント"),
    ("パスワードの有効期限はどれくらいですか", "180日です。期限の14日前から通知メールが届きます。", "アカウント"),
    ("PCを電車に置き忘れました", "すぐにヘルプデスクへ連絡してください。遠隔ロックとデータ消去を行います。鉄道会社と警察への届け出もお願いします。", "PC"),
    ("ノートPCのバッテリーが膨らんでいます", "危険ですので直ちに使用を中止し、ヘルプデスクで代替機を受け取ってください。", "PC"),
    ("MacBookを使いたいのですが", "開発職の方は所属長経由でPC貸与申請を出せばMacBook Proを選択できます。", "PC"),
    ("印刷したのに複合機から出てきません", "セキュアプリントのため、複合機のカードリーダーに社員証をかざすと出力されます。データは24時間で消えます。", "プリンタ"),
    ("スキャンしたPDFを取引先に直接送れますか", "複合機から社外アドレスへの直接送信はできません。「スキャン to Me」で自分宛てに送ってから転送してください。", "プリンタ"),
    ("複合機のトナーが切れています", "総務部が交換します。複合機に貼ってある管理番号を添えて総務部に連絡してください。", "プリンタ"),
    ("会議室のディスプレイにPCの画面が映りません", "ディスプレイのリモコンで入力を「HDMI2」に切り替えてください。USB-Cケーブルの場合は「USB-C」入力です。", "会議室"),
    ("Outlookのメールボックスがいっぱいと表示されます", "メールボックスの上限は50GBです。オンラインアーカイブを有効にすると古いメールが自動で移動されます。手順はヘルプデスクが案内します。", "メール"),
    ("共有フォルダにアクセス権がありません", "アクセス権の付与は所属長がポータルの「共有フォルダ権限申請」から申請します。承認後1営業日で反映されます。", "ファイル共有"),
    ("新しいスマホに認証アプリを移したい", "古いスマホが使えるうちにセキュリティ情報から新しい端末を追加してください。古い端末がない場合はヘルプデスクで一時アクセスパスを発行します。", "MFA"),
    ("Zoomをインストールしたい", "ZoomはCompany Portalから承認なしでインストールできます。", "ソフトウェア"),
    ("フリーソフトを使いたい", "カタログにないソフトはポータルのソフトウェア申請から申請してください。セキュリティチームが5営業日以内に審査します。", "ソフトウェア"),
    ("不審なメールが届きました", "リンクや添付は開かず、メールソフトの「フィッシング報告」ボタンで報告してください。", "セキュリティ"),
    ("Wi-Fiのゲスト用パスワードを教えてください", "来客用のゲストコードは1階受付で発行するか、ポータルの「施設 → ゲストWi-Fi」から社員が発行できます（最長5日）。", "ネットワーク"),
]
JA_HR = [
    ("経費精算の締め切りはいつですか", "発生月の翌月10日までです。承認された経費は25日に振り込まれます。", "経費"),
    ("領収書をなくしてしまいました", "領収書がない場合は「領収書紛失届」に所属長の承認を得て申請してください。3万円以上の場合は原則として認められません。", "経費"),
    ("タクシー代は精算できますか", "22時以降の帰宅や公共交通機関がない場合などに限り精算できます。", "経費"),
    ("有給休暇は何日ありますか", "入社時に10日、毎年4月1日に勤続年数に応じて付与されます（最大20日）。繰越を含め最大40日まで保有できます。", "休暇"),
    ("結婚休暇は何日もらえますか", "本人の結婚で5日です。入籍日から6か月以内に取得してください。", "休暇"),
    ("祖母が亡くなりました。休暇はありますか", "祖父母の忌引休暇は2日です。勤怠システムから申請してください。", "休暇"),
    ("給与明細はどこで見られますか", "給与明細はWeb明細システム「PayView」で毎月25日に公開されます。紙の明細は発行していません。", "給与"),
    ("年末調整の書類の提出期限は", "年末調整の申告は11月30日までに人事システムから提出してください。", "給与"),
    ("引っ越したので住所を変更したい", "人事システムの「住所変更申請」から届け出てください。通勤手当も新しい経路で再計算されます。", "人事手続き"),
    ("健康診断の予約方法を教えてください", "人事部から届くメールのリンクから提携クリニックを予約してください。受診期間は5月〜7月です。", "健康"),
    ("人間ドックの補助はいくらですか", "35歳以上が対象で、上限3万円まで補助します。", "健康"),
    ("ロッカーの鍵をなくしました", "総務部で鍵を再発行します。再発行手数料として1,000円を給与から差し引きます。", "総務"),
    ("社員証を家に忘れました", "1階受付で当日限りの一時入館証を発行します。帰宅時に受付へ返却してください。", "総務"),
    ("名刺がなくなりそうです", "ポータルの名刺発注フォームから注文してください。納品まで5営業日かかります。", "総務"),
    ("自転車で通勤したい", "自転車通勤は総務部で駐輪場の利用登録をしてステッカーを受け取ってください。任意保険への加入が条件です。", "総務"),
    ("会社に私物の荷物を届けてもらえますか", "私物の宅配便は会社で受け取れません。自宅あてに配送してください。", "総務"),
    ("コロナに感染しました。いつから出社できますか", "発症日の翌日から5日間は出社を控え、症状が軽快して24時間経過してから出社してください。社内フォームで人事部に報告をお願いします。", "健康"),
    ("育児休業はいつまでに申請すればよいですか", "休業開始の1か月前までに人事部へ申請してください。", "休暇"),
    ("在宅勤務の手当はありますか", "月額3,000円の在宅勤務手当が給与に加算されます。", "在宅勤務"),
    ("ストレスチェックの結果は上司に知られますか", "結果は本人にのみ通知され、本人の同意なく会社に提供されることはありません。", "健康"),
]
EN_SUPPORT = [
    ("Customer cannot issue new invoices, says limit reached", "Starter plan allows 50 invoices per month. They can keep drafting; issuing resumes next month or after upgrading to Business.", "CloudLedger"),
    ("How can a customer fix a mistake on an issued invoice?", "Issued invoices can't be edited or deleted. Issue a credit note to cancel it, then issue a new invoice.", "CloudLedger"),
    ("Customer's client did not get the invoice e-mail", "Check the Sent log. If the status is bounced, the address is wrong or the recipient's server rejected it; correct the address and send again.", "CloudLedger"),
    ("How does a customer add a logo to invoices?", "Settings > Templates > Upload logo. PNG or JPEG up to 2 MB; it appears on all new invoices.", "CloudLedger"),
    ("How do I add more users to our CloudLedger account?", "An admin goes to Settings > Users > Invite. Starter allows 3 users, Business 20, Enterprise unlimited.", "CloudLedger"),
    ("Customer forgot their CloudLedger password", "Use 'Forgot password' on the login page. The reset link is valid for 24 hours.", "CloudLedger"),
    ("Does CloudLedger support foreign currencies?", "Yes, on Business and Enterprise plans: USD, EUR, GBP, CNY and KRW invoices with daily exchange rates.", "CloudLedger"),
    ("Where is customer data stored?", "CloudLedger runs in data centers in the Tokyo and Osaka regions; backups stay in Japan.", "CloudLedger"),
    ("What is the API rate limit?", "600 requests per minute per company. Requests over the limit get HTTP 429 with a Retry-After header.", "CloudLedger"),
    ("Bank transactions stopped importing", "The bank connection probably needs re-authentication (every 90 days or after a bank password change). Click Re-authenticate in Settings > Bank connections.", "CloudLedger"),
    ("Customer sees duplicate bank transactions", "Select the duplicates in the transaction list and mark them Excluded; no journal entries are created.", "CloudLedger"),
    ("Journal export never finished", "Exports over 100,000 rows run in the background; a download link is e-mailed, usually within 15 minutes. Check the spam folder.", "CloudLedger"),
    ("Exported CSV shows garbled Japanese in old software", "Default export is UTF-8 with BOM. Choose Shift_JIS in the export options for older software.", "CloudLedger"),
    ("What happens to data after a customer cancels?", "Data is kept for 90 days after the contract ends and then permanently deleted. Ask them to export everything first.", "CloudLedger"),
    ("Can customers pay the subscription by invoice?", "Starter and Business are paid by credit card. Enterprise customers can pay by bank transfer against a monthly invoice.", "Billing"),
    ("Customer wants a refund for unused months", "Annual plans are not refunded pro rata; monthly plans can be cancelled before the next billing date with no further charge.", "Billing"),
]
EN_IT = [
    ("My laptop does not connect to the office Wi-Fi anymore", "The device certificate has probably expired. Connect once by cable or VPN so it renews, then restart.", "IT"),
    ("How long is a guest Wi-Fi code valid?", "Codes from reception are valid for one day; codes you create in the portal are valid for up to 5 days.", "IT"),
    ("I keep getting MFA prompts I didn't start", "Deny them, change your password immediately and report it to the security team: someone likely knows your password.", "IT"),
    ("Can I install Visual Studio Code?", "Yes, it is in the Company Portal catalog; no approval needed.", "IT"),
    ("I clicked a link in a phishing e-mail", "Change your password now and call the security hotline at extension 4199.", "IT"),
    ("Can I work remotely from abroad for two weeks?", "Only with written approval from HR and IT in advance.", "HR"),
    ("How many remote days can I take?", "Up to three days per week after your first three months.", "HR"),
    ("What is the hotel limit for business trips in Osaka?", "12,000 yen per night in Tokyo and Osaka, 10,000 yen elsewhere in Japan.", "HR"),
    ("Is there a daily allowance for overseas trips?", "5,000 yen per day abroad; 2,000 yen for overnight trips in Japan.", "HR"),
    ("How do I book the Galaxy Hall?", "Through General Affairs with the event request form, at least two weeks before the event.", "GA"),
    ("Our meeting room booking disappeared", "Bookings are released if nobody checks in on the door tablet within 10 minutes of the start.", "GA"),
    ("Can I get a parking space at the office?", "There is no employee car parking. Visitors' cars can be registered with reception one day ahead; cyclists register with General Affairs.", "GA"),
    ("Where do I borrow an external monitor for home?", "General Affairs lends monitors and keyboards for remote work; return them when you leave the company.", "GA"),
    ("The room display shows no signal", "Switch the display input to HDMI2 with the remote; for USB-C cables choose the USB-C input.", "GA"),
]

TYPOS_JA = [("ください", "下さい"), ("できません", "出来ません"), ("パスワード", "パスワ-ド"), ("VPN", "ＶＰＮ"), ("PC", "ＰＣ"), ("ログイン", "ﾛｸﾞｲﾝ")]
TYPOS_EN = [("receive", "recieve"), ("the", "teh"), ("password", "pasword"), ("invoice", "invocie"), ("cannot", "can't")]
NAMES = ["tanaka.hiroshi", "suzuki.yumi", "sato.kenta", "watanabe.aya", "j.smith", "m.garcia", "l.chen"]

def pii_ja():
    r = random.random()
    if r < 0.33:
        return f"（連絡先: {random.choice(NAMES)}@hoshizora.example）"
    if r < 0.66:
        return f"折り返しは090-{random.randint(1000,9999)}-{random.randint(1000,9999)}までお願いします。"
    return f"会社カード 4111 1111 1111 1111 の件も確認したいです。"

def pii_en():
    r = random.random()
    if r < 0.4:
        return f" Contact me at {random.choice(NAMES)}@customer-mail.example."
    if r < 0.8:
        return f" Call back on +81 3 {random.randint(1000,9999)} {random.randint(1000,9999)}."
    return " Card on file is 5555 5555 5555 4444."

def noisy(text, typos):
    out = text
    for a, b in random.sample(typos, 2):
        out = out.replace(a, b, 1)
    return out

def timestamp(i):
    day = 1 + (i * 7) % 28
    month = 1 + (i * 5) % 12
    return f"2025-{month:02d}-{day:02d} {9 + i % 9:02d}:{(i * 13) % 60:02d}"

def expand(base, typos, pii, unresolved_questions, lang):
    rows = []
    i = 0
    for q, a, cat in base:
        i += 1
        rows.append(dict(question=q, answer=a, status="resolved", category=cat, created_at=timestamp(i)))
        r = random.random()
        if r < 0.55:  # asked again with a typo / width variant, same answer (near-duplicate)
            i += 1
            rows.append(dict(question=noisy(q, typos), answer=a, status="resolved", category=cat, created_at=timestamp(i)))
        if r > 0.6:  # exact duplicate ticket
            i += 1
            rows.append(dict(question=q, answer=a, status="closed" if lang == "en" else "解決済み", category=cat, created_at=timestamp(i)))
        if random.random() < 0.45:  # the user pasted personal data into the ticket
            i += 1
            rows.append(dict(question=q + (pii() if lang == "ja" else pii()), answer=a, status="resolved", category=cat, created_at=timestamp(i)))
    for q, a, cat in random.sample(base, len(base) // 3):  # the same question again months later
        i += 1
        q2 = (q + random.choice(["。急ぎです", "（再質問）", "。教えてください"])) if lang == "ja" else (q + random.choice([" again", " - urgent", "?"]))
        rows.append(dict(question=q2, answer=a, status="resolved", category=cat, created_at=timestamp(i + 40)))
    for q, cat in unresolved_questions:
        i += 1
        status = random.choice(["open", "pending"] if lang == "en" else ["未解決", "対応中", "open"])
        rows.append(dict(question=q, answer="" if random.random() < 0.5 else ("Investigating." if lang == "en" else "確認中です。"), status=status, category=cat, created_at=timestamp(i)))
    random.shuffle(rows)
    return rows

UNRESOLVED_JA = [("社内チャットの通知が遅れます", "チャット"), ("会議室の予約アプリが重い", "会議室"), ("プリンタの両面印刷ができない", "プリンタ"),
                 ("VPNの速度が遅い気がします", "VPN"), ("Excelのマクロが動かない", "ソフトウェア"), ("経費アプリでエラー500が出る", "経費"),
                 ("食堂のメニューを知りたい", "総務"), ("有給の残日数が合わない気がする", "休暇"), ("PCのファンがうるさい", "PC"), ("在宅勤務の回数を増やしたい", "在宅勤務")]
UNRESOLVED_EN = [("Dashboard loads slowly for a customer", "CloudLedger"), ("Customer asks for a Chromebook app", "CloudLedger"),
                 ("Bank X not in the list", "CloudLedger"), ("Invoice PDF fonts look wrong", "CloudLedger"), ("Webhook deliveries delayed", "CloudLedger"),
                 ("Laptop fan is loud", "IT"), ("Need a second monitor at the office", "GA"), ("VPN slow from hotel", "IT")]

def write_csv(path, rows, with_id=True):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "created_at", "category", "question", "answer", "status"])
        for n, r in enumerate(rows, 1):
            w.writerow([f"T{n:05d}", r["created_at"], r["category"], r["question"], r["answer"], r["status"]])

it_rows = expand(JA_IT, TYPOS_JA, pii_ja, UNRESOLVED_JA[:5] + UNRESOLVED_JA[8:9], "ja")
write_csv("knowledge/logs/it-helpdesk.ja.csv", it_rows)
hr_rows = expand(JA_HR, TYPOS_JA, pii_ja, UNRESOLVED_JA[5:8] + UNRESOLVED_JA[9:], "ja")
with open("knowledge/logs/hr-ga.ja.jsonl", "w", encoding="utf-8") as f:
    for r in hr_rows:
        f.write(json.dumps({"question": r["question"], "answer": r["answer"], "status": r["status"], "category": r["category"], "tags": [r["category"]], "created_at": r["created_at"]}, ensure_ascii=False) + "\n")
en_rows = expand(EN_SUPPORT, TYPOS_EN, pii_en, UNRESOLVED_EN[:5], "en") + expand(EN_IT, TYPOS_EN, pii_en, UNRESOLVED_EN[5:], "en")
write_csv("knowledge/logs/support-and-office.en.csv", en_rows)
print(len(it_rows), len(hr_rows), len(en_rows), "total", len(it_rows) + len(hr_rows) + len(en_rows))
